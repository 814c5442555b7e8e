"""`lightfmp export` and `lightfmp profile` (registered on the main app by cli/app.py)."""


def register(app) -> None:
    pass
