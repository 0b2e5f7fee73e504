"""``trajscope fsck RUN [--repair]``: verify a run end to end after a crash or a disk fault."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

RootOption = Annotated[
    Optional[str], typer.Option("--root", help="Store root: a directory or fsspec URL (default $TRAJSCOPE_ROOT or ./runs).")
]


def register(app: typer.Typer) -> None:
    """Add ``fsck``."""

    @app.command()
    def fsck(
        run: Annotated[str, typer.Argument(help="Run id under --root, or the path/URL of a <run>.zarr.")],
        root: RootOption = None,
        repair: Annotated[bool, typer.Option("--repair", help="Finish what a crash left half done (create, finish, "
                                                              "resume), under the writer lock.")] = False,
    ) -> None:
        """Check every committed chunk (presence, crc32c), shapes, attributes and links; exit 0 when sound, 1 if not."""
        from trajscope.store import resolve_run
        from trajscope.store.fsck import fsck_run

        store_root, run_id = resolve_run(run, root)
        report = fsck_run(store_root, run_id, repair=repair)
        print(report.summary())
        for line in report.repaired:
            print(f"  repaired: {line}")
        for line in report.problems:
            print(f"  problem: {line}")
        if not report.ok:
            raise typer.Exit(1)
