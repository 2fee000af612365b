from pubctl.cli import main

main()
