"""Unit tests (sans-IO, in-process), one package per room (README "Develop")."""
