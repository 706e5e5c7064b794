"""Fuzz harnesses (atheris); run by tests/test_fuzz.py and `make fuzz`."""
