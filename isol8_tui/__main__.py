from isol8_tui.cli import main

main()
