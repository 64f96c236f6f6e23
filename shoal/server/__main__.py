from shoal.controlplane.main import cli_main

cli_main()
