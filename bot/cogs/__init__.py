"""One feature per cog file."""
