DROP TABLE inventory_item;
