import sys

try:
    from .cli import main

    sys.exit(main())
except KeyboardInterrupt:  # Ctrl-C before a command could take over (while importing)
    sys.exit(130)
