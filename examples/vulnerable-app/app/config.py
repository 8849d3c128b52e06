"""Settings, with credentials written into the code (planted issues)."""

DATABASE_HOST = "db.internal.example"
DATABASE_USER = "app"
DATABASE_PASSWORD = "Wint3r-is-coming-2024!"
AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
