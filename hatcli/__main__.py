from hatcli.cli import main

main()
