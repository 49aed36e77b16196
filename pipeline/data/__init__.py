"""Data: reading a data set (`read.py`), inspecting and checking it (`inspection.py`) and
describing it (`card.py`)."""
