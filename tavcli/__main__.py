from tavcli.faces.cli import run

run()
