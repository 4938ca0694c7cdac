"""RecBole compatibility shims that change numerics or speed (diger/compat.py)."""
import subprocess
import sys


def test_importing_diger_leaves_anomaly_mode_off():
    # recbole/model/sequential_recommender/sine.py turns anomaly mode on globally at import time,
    # which made every backward pass record stack traces and check for NaN (1.6x slower T5 steps).
    code = ("import torch, diger.quick_start, recbole.trainer, recbole.model.sequential_recommender;"
            "print(torch.is_anomaly_enabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_anomaly_mode_set_before_import_is_kept():
    code = ("import torch; torch.autograd.set_detect_anomaly(True, check_nan=False);"
            "import diger.quick_start; print(torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True False"
