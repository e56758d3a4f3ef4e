"""Dataset uploads (``POST /v1/datasets``): ``archive`` extracts an archive safely within budgets, ``store`` receives,
stores by content, lists, deletes and expires uploads. The engine finds a stored upload through
service/pipeline/data/upload.py and never imports this package."""
