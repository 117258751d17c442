"""The test suite: unit/ and integration/, each one package per room of the package tree;
support/ what they share (README "Develop")."""
