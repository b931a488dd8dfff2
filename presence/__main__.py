from presence.cli import main

main()
