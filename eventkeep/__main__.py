from eventkeep.cli import main

raise SystemExit(main())
