from msgtrace.cli import main

main()
