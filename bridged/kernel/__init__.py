"""The only code that speaks netlink and tun ioctls. No policy lives here."""
