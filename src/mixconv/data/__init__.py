"""Data: datasets (scikit-learn's digits, image folders), torchvision v2 transforms, GPU JPEG decoding."""
