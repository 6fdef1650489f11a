"""``python -m recexplainer.report [--root artifacts] [--out artifacts/report]``: see ``tables.main``."""

from recexplainer.report.tables import main

main()
