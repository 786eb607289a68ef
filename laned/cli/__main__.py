from laned.cli import main

main()
