DROP TABLE community_post;
