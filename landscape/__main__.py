"""`python -m landscape` runs the command line."""
from landscape.cli.main import main

if __name__ == "__main__":
    main()
