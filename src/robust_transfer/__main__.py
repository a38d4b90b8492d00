from robust_transfer.cli import main

raise SystemExit(main())
