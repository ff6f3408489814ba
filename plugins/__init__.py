"""Built-in plugins of proxistore, registered through the `proxistore` entry-point group like any other."""
