"""Objects, jobs and resources as users and the database see them."""
