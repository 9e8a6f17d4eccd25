from feddf.cli import main

main(prog_name="feddf")
