"""`python -m ehrshare` runs the same CLI as the `ehrshare` command."""

from ehrshare.cli import main

if __name__ == "__main__":
    main()
