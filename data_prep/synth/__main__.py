"""``python -m data_prep.synth ...`` (same options as ``python -m data_prep synth``)."""

from data_prep.synth.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
