from eventkeep.cli import main

if __name__ == "__main__":  # worker processes import this module too; they must not serve
    raise SystemExit(main())
