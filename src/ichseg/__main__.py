from ichseg.cli import main

raise SystemExit(main())
