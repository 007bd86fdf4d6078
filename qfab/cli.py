"""The ``qfab`` command (filled in below)."""
def main(argv=None):
    return 0
