"""Integration tests (real processes, sockets, namespaces), one package per room (README "Develop")."""
