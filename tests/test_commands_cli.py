"""The command line: ``mixconv info`` and ``python -m mixconv``."""
from __future__ import annotations

import json
import subprocess
import sys

from mixconv.cli import main


def test_info_table(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "mixnet_s" in out and "4,134,606" in out and "239.17M" in out and "256.00M" in out and "75.99" in out


def test_info_json_one_model(capsys):
    assert main(["info", "--model", "mixnet_s", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == 4_134_606 and data["feature_channels"] == [16, 24, 40, 120, 200]
    assert 238e6 < data["macs"] < 240e6
    assert [s["reduction"] for s in data["stages"]] == [2, 4, 8, 16, 32]
    assert data["stages"][2]["blocks"][0]["kernel_sizes"] == [3, 5, 7]


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["info", "--model", "mixnet_q"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'mixnet_q'" in err and "did you mean" in err


def test_python_dash_m_runs_the_same_cli():
    proc = subprocess.run([sys.executable, "-m", "mixconv", "--version"], capture_output=True, text=True, check=True)
    assert proc.stdout.startswith("mixconv ")
