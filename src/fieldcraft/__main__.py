from fieldcraft.cli import run

run()
