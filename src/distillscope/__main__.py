"""`python -m distillscope`: the same as the `distillscope` command."""

from distillscope.cli import main

if __name__ == "__main__":
    main()
