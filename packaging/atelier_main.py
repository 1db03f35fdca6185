"""The frozen app's entry point (PyInstaller runs this file as `__main__`).

`freeze_support()` comes first: the backend worker is this same executable started again by multiprocessing
(spawn), with `--multiprocessing-fork` on its command line, and so is multiprocessing's resource tracker; for those
children freeze_support runs their job and exits before any GUI code is imported.
"""

import multiprocessing

if __name__ == "__main__":
    multiprocessing.freeze_support()

    import sys

    from desktop_app.app import main

    sys.exit(main())
