from sipwall.cli import main

raise SystemExit(main())
