"""recsys: nightly batch recommendations with DIN / DIEN / DSIN."""
