from vitsearch.cli import main

raise SystemExit(main())
