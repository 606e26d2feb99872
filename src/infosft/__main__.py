from infosft.cli import main

raise SystemExit(main())
