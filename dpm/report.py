"""python -m dpm.report DIR [DIR ...]: the sweep report (dpm.sweeps.report)."""

from dpm.sweeps.report import main

if __name__ == "__main__":
    main()
