"""The MixConv paper's studies, runnable: kernel-size sweep, single-layer ablation, channel partition, dilation.

Each study is a list of arms (:mod:`mixconv.studies.arms`), every arm a MixConv-MobileNet trained by
``mixconv train``'s loop (:mod:`mixconv.studies.runner`), reported as a CSV, the paper's plot and the paper's
claims against what was measured (:mod:`mixconv.studies.claims`)."""
from mixconv.studies.arms import STUDIES, Arm, StudyError, study_arms
from mixconv.studies.claims import Claim, study_claims
from mixconv.studies.presets import PRESETS, StudyPreset
from mixconv.studies.runner import Plan, StudySettings, plan_study, run_study

__all__ = ["Arm", "Claim", "PRESETS", "Plan", "STUDIES", "StudyError", "StudyPreset", "StudySettings", "plan_study",
           "run_study", "study_arms", "study_claims"]
