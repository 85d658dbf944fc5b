"""The local fleet (inventory/local.py): connects as root with the key `fleet up` made."""
