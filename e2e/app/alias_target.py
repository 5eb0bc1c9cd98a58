print("reached only through a runfiles symlink")
