from canonstore.cli import main

main()
