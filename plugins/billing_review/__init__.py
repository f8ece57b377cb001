"""The "Billing review" pages of the Airflow UI (web layer; the plugin class is `billing_review_plugin.py`)."""
