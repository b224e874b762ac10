"""What the tests share: tiny models built in code, a server started in a subprocess."""
