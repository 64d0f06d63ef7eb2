from studio.desktop.main import entry_point

entry_point()
