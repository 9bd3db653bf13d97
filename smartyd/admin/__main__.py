"""``python -m smartyd.admin``: the same as the ``smartyd-admin`` console script."""

from smartyd.admin import main

main()
