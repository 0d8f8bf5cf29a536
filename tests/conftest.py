"""Test session set-up: no kernel cache on disk and no tuning logs unless a test asks for them,
so every test builds exactly the kernel it names."""
import os

os.environ["LUTC_CACHE"] = "0"
os.environ["LUTC_TUNING_LOGS"] = os.path.join(os.path.dirname(__file__), "_no_tuning_logs")
