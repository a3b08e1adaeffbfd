"""Local contract emulators of the providers' APIs, for tests, the bench and `switchboard emulate`.

Each emulator is a Flask app that answers with the provider's real status codes, response shapes and error
bodies, so the providers' own SDKs can be pointed at it over real HTTP on 127.0.0.1.
"""
