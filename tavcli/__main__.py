from tavcli.faces.cli import app

app(prog_name="tav")
